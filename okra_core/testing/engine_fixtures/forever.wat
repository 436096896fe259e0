;; ABI v1 guest whose okra_handle never returns: a hostile, CPU-bound guest.
(module
  (memory (export "memory") 2)
  (func (export "okra_abi_version") (result i32) (i32.const 1))
  (func (export "okra_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "okra_handle") (param i32 i32) (result i64)
    (loop $forever (br $forever))
    (i64.const 0)))
