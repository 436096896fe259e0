;; A guest that says it speaks guest ABI version 2.
(module
  (memory (export "memory") 2)
  (func (export "okra_abi_version") (result i32) (i32.const 2))
  (func (export "okra_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "okra_handle") (param i32 i32) (result i64) (i64.const 0)))
