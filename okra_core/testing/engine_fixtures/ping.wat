;; ABI v1 guest that calls a host function without parameters, okra.test.ping, and
;; answers with its i32 result as 4 little-endian bytes.
(module
  (import "okra.test" "ping" (func $ping (result i32)))
  (memory (export "memory") 2)
  (func (export "okra_abi_version") (result i32) (i32.const 1))
  (func (export "okra_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "okra_handle") (param i32 i32) (result i64)
    ;; Response{output: <4 bytes>} at 2048: tag 0x0a, length 4, the value
    (i32.store8 (i32.const 2048) (i32.const 0x0a))
    (i32.store8 (i32.const 2049) (i32.const 4))
    (i32.store (i32.const 2050) (call $ping))
    (i64.or (i64.shl (i64.const 2048) (i64.const 32)) (i64.const 6))))
