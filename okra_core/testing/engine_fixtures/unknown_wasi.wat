;; A module importing a WASI function that does not exist.
(module
  (import "wasi_snapshot_preview1" "no_such_call" (func))
  (memory (export "memory") 1))
