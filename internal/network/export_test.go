package network

// AddResolved exposes addResolved to tests.
var AddResolved = (*Manager).addResolved
