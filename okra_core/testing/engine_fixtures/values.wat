;; ABI v1 guest that calls host functions taking and returning i64 and f64 values:
;; okra.test.mix(i32 -1, i64 -0x123456789, f64 2.5) -> i64 and okra.test.half(f64 5.0)
;; -> f64. Its output is 16 bytes: mix's result (i64 LE), then half's (f64 LE).
(module
  (import "okra.test" "mix" (func $mix (param i32 i64 f64) (result i64)))
  (import "okra.test" "half" (func $half (param f64) (result f64)))
  (memory (export "memory") 2)
  (func (export "okra_abi_version") (result i32) (i32.const 1))
  (func (export "okra_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "okra_handle") (param i32 i32) (result i64)
    ;; Response{output: <16 bytes>} at 16: tag 0x0a, length 16, the values
    (i32.store16 (i32.const 16) (i32.const 0x100a))
    (i64.store (i32.const 18)
      (call $mix (i32.const -1) (i64.const -0x123456789) (f64.const 2.5)))
    (f64.store (i32.const 26) (call $half (f64.const 5.0)))
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 18))))
