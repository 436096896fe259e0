package okra

// Bindings for the okra.secrets host API: secrets the operator provides (environment,
// files), readable only by name and only if okra.toml lists the name.

import "unsafe"

//go:wasmimport okra.secrets get
func secretsGet(namePtr unsafe.Pointer, nameLen int32, outPtr unsafe.Pointer, outCap int32) int32

// secretBufSize fits most tokens and keys; larger secrets are fetched in one more step.
const secretBufSize = 256

// Secret returns the secret called name. It fails with PermissionDenied if okra.toml
// does not grant the name ([host_apis."okra.secrets"] names = [...]) and NotFound if the
// operator's secrets provider has no value for it. Each call asks the host again, so a
// rotated secret is seen at once; the value is in a buffer of its own, never shared.
func Secret(name string) ([]byte, error) {
	buf := make([]byte, secretBufSize)
	return CallHost(buf, func(ptr unsafe.Pointer, capacity int32) int32 {
		return secretsGet(stringPtr(name), int32(len(name)), ptr, capacity)
	})
}

// SecretString is Secret as a string.
func SecretString(name string) (string, error) {
	value, err := Secret(name)
	return string(value), err
}
