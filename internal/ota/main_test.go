package ota_test

import (
	"testing"

	"github.com/outpost-iot/outpost/internal/outposttest"
)

func TestMain(m *testing.M) { outposttest.Main(m) }
