package extbroker

// RetryShard exposes retryShard to the tests.
var RetryShard = retryShard
