;; ABI v1 guest that can never allocate a request buffer: okra_buffer returns 0.
(module
  (memory (export "memory") 1)
  (func (export "okra_abi_version") (result i32) (i32.const 1))
  (func (export "okra_buffer") (param i32) (result i32) (i32.const 0))
  (func (export "okra_handle") (param i32 i32) (result i64) (i64.const 0)))
