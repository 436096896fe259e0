module orders

go 1.24

require okra.dev/sdk/okra v0.0.0

// okra build keeps a copy of the SDK here, so the build never downloads anything.
replace okra.dev/sdk/okra => ./.okra/sdk
