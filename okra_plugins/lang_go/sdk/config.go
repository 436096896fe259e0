package okra

// Bindings for the okra.config host API: the service's settings, from okra.toml
// ([host_apis."okra.config"] values) and overridden at deploy (okra serve --config).

import "unsafe"

//go:wasmimport okra.config get
func configGet(keyPtr unsafe.Pointer, keyLen int32, outPtr unsafe.Pointer, outCap int32) int32

// Config returns the setting called name; found is false if the service has none by
// that name. A module that uses it needs [host_apis."okra.config"] in okra.toml.
func Config(name string) (value string, found bool, err error) {
	data, _, r := callScratch(func(ptr unsafe.Pointer, capacity int32) int32 {
		return configGet(stringPtr(name), int32(len(name)), ptr, capacity)
	})
	if r == -int32(NotFound) {
		return "", false, nil
	}
	if r < 0 {
		return "", false, HostError(r)
	}
	return string(data), true, nil
}

// ConfigOr returns the setting called name, or fallback if there is none (or it cannot
// be read).
func ConfigOr(name, fallback string) string {
	value, found, err := Config(name)
	if !found || err != nil {
		return fallback
	}
	return value
}
