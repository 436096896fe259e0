;; ABI v1 guest that breaks the ABI: its response lies outside its memory.
(module
  (memory (export "memory") 2)
  (func (export "okra_abi_version") (result i32) (i32.const 1))
  (func (export "okra_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "okra_handle") (param i32 i32) (result i64)
    ;; ptr 0x7fff0000, len 16: far past the 128 KiB memory
    (i64.const 0x7fff000000000010)))
