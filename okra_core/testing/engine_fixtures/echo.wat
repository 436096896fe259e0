;; ABI v1 echo guest: answers every request with its input, and method "Fail" with an
;; error envelope. The response reuses the request in place: the input field (tag 0x12)
;; becomes the response's output field (tag 0x0a), so no copy is made.
(module
  (memory (export "memory") 2 64)
  ;; Response{code: 9, message: "requested failure"}
  (data (i32.const 16) "\10\09\1a\11requested failure")
  (global $pos (mut i32) (i32.const 0))

  (func (export "okra_abi_version") (result i32) (i32.const 1))

  ;; The request buffer lives at 1024; grow memory until it holds `size` bytes.
  (func (export "okra_buffer") (param $size i32) (result i32)
    (local $need i32)
    (local.set $need
      (i32.shr_u (i32.add (i32.add (local.get $size) (i32.const 1024)) (i32.const 65535))
                 (i32.const 16)))
    (if (i32.gt_u (local.get $need) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $need) (memory.size))) (i32.const -1))
          (then (return (i32.const 0))))))
    (i32.const 1024))

  ;; Reads a varint at $pos and advances it.
  (func $varint (result i32)
    (local $result i32) (local $shift i32) (local $byte i32)
    (loop $next
      (local.set $byte (i32.load8_u (global.get $pos)))
      (global.set $pos (i32.add (global.get $pos) (i32.const 1)))
      (local.set $result
        (i32.or (local.get $result)
                (i32.shl (i32.and (local.get $byte) (i32.const 0x7f)) (local.get $shift))))
      (local.set $shift (i32.add (local.get $shift) (i32.const 7)))
      (br_if $next (i32.and (local.get $byte) (i32.const 0x80))))
    (local.get $result))

  (func (export "okra_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $end i32) (local $key i32) (local $field i32) (local $n i32) (local $tag_at i32)
    (local $input_at i32) (local $input_end i32) (local $method_at i32) (local $method_len i32)
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (local.set $input_at (i32.const -1))
    (global.set $pos (local.get $ptr))
    (block $done
      (loop $fields
        (br_if $done (i32.ge_u (global.get $pos) (local.get $end)))
        (local.set $tag_at (global.get $pos))
        (local.set $key (call $varint))
        (local.set $field (i32.shr_u (local.get $key) (i32.const 3)))
        (block $skipped
          (block $fixed32
            (block $fixed64
              (block $bytes
                (block $varint_field
                  (br_table $varint_field $fixed64 $bytes $skipped $skipped $fixed32
                            (i32.and (local.get $key) (i32.const 7))))
                ;; wire type 0: varint
                (drop (call $varint))
                (br $skipped))
              ;; wire type 2: length-delimited
              (local.set $n (call $varint))
              (if (i32.eq (local.get $field) (i32.const 1))
                (then (local.set $method_at (global.get $pos))
                      (local.set $method_len (local.get $n))))
              (if (i32.eq (local.get $field) (i32.const 2))
                (then (local.set $input_at (local.get $tag_at))
                      (local.set $input_end (i32.add (global.get $pos) (local.get $n)))))
              (global.set $pos (i32.add (global.get $pos) (local.get $n)))
              (br $skipped))
            ;; wire type 1: fixed64
            (global.set $pos (i32.add (global.get $pos) (i32.const 8)))
            (br $skipped))
          ;; wire type 5: fixed32
          (global.set $pos (i32.add (global.get $pos) (i32.const 4))))
        (br $fields)))
    ;; method "Fail" -> the error envelope
    (if (i32.and (i32.eq (local.get $method_len) (i32.const 4))
                 (i32.eq (i32.load (local.get $method_at)) (i32.const 0x6c696146)))
      (then (return (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 21)))))
    ;; no input field -> an empty response
    (if (i32.lt_s (local.get $input_at) (i32.const 0))
      (then (return (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32)))))
    (i32.store8 (local.get $input_at) (i32.const 0x0a))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $input_at)) (i64.const 32))
            (i64.extend_i32_u (i32.sub (local.get $input_end) (local.get $input_at))))))
