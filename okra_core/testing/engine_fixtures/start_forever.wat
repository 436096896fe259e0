;; ABI v1 guest whose start function never returns: an engine with the deadline
;; capability must stop it at InstanceLimits.start_seconds (GuestTimeout).
(module
  (memory (export "memory") 1)
  (func (export "okra_abi_version") (result i32) (i32.const 1))
  (func (export "okra_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "okra_handle") (param i32 i32) (result i64) (i64.const 0))
  (func $spin (loop $forever (br $forever)))
  (start $spin))
