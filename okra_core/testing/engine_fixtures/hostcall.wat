;; ABI v1 guest that calls a host function with a variable-size result.
;;
;; okra_handle passes the whole request envelope to okra.test.repeat with a 16-byte
;; output area. A result that fits arrives there; a longer one stays pending and is
;; fetched with okra.abi.take into room made for it. An error (a negative result) is
;; answered with that code and the pending message, also fetched with okra.abi.take.
(module
  (import "okra.test" "repeat" (func $repeat (param i32 i32 i32 i32) (result i32)))
  (import "okra.abi" "take" (func $take (param i32 i32) (result i32)))
  (memory (export "memory") 2)

  (global $small i32 (i32.const 67000))   ;; 16-byte output area
  (global $msg i32 (i32.const 67100))     ;; 1 KiB for error messages
  (global $big i32 (i32.const 70000))     ;; grows to fit a pending result

  (func (export "okra_abi_version") (result i32) (i32.const 1))

  ;; The request buffer lives at 1024; up to 64 KiB.
  (func (export "okra_buffer") (param $size i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $size) (i32.const 65536))
      (then (i32.const 0)) (else (i32.const 1024))))

  (func $varint_size (param $n i32) (result i32)
    (local $size i32)
    (local.set $size (i32.const 1))
    (block $done
      (loop $more
        (br_if $done (i32.lt_u (local.get $n) (i32.const 0x80)))
        (local.set $n (i32.shr_u (local.get $n) (i32.const 7)))
        (local.set $size (i32.add (local.get $size) (i32.const 1)))
        (br $more)))
    (local.get $size))

  (func $write_varint (param $at i32) (param $n i32)
    (block $done
      (loop $more
        (br_if $done (i32.lt_u (local.get $n) (i32.const 0x80)))
        (i32.store8 (local.get $at) (i32.or (local.get $n) (i32.const 0x80)))
        (local.set $at (i32.add (local.get $at) (i32.const 1)))
        (local.set $n (i32.shr_u (local.get $n) (i32.const 7)))
        (br $more)))
    (i32.store8 (local.get $at) (local.get $n)))

  ;; (start << 32) | (end - start)
  (func $span (param $start i32) (param $end i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $start)) (i64.const 32))
            (i64.extend_i32_u (i32.sub (local.get $end) (local.get $start)))))

  (func (export "okra_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $r i32) (local $m i32) (local $data i32) (local $start i32) (local $need i32)
    (local.set $r (call $repeat (local.get $ptr) (local.get $len) (global.get $small) (i32.const 16)))
    (if (i32.lt_s (local.get $r) (i32.const 0))
      (then
        ;; Response{code: -r, message: <pending message>}
        (local.set $m (call $take (global.get $msg) (i32.const 1024)))
        (if (i32.lt_s (local.get $m) (i32.const 0)) (then (local.set $m (i32.const 0))))
        (local.set $start
          (i32.sub (global.get $msg) (i32.add (call $varint_size (local.get $m)) (i32.const 3))))
        (i32.store8 (local.get $start) (i32.const 0x10))
        (i32.store8 (i32.add (local.get $start) (i32.const 1)) (i32.sub (i32.const 0) (local.get $r)))
        (i32.store8 (i32.add (local.get $start) (i32.const 2)) (i32.const 0x1a))
        (call $write_varint (i32.add (local.get $start) (i32.const 3)) (local.get $m))
        (return (call $span (local.get $start) (i32.add (global.get $msg) (local.get $m))))))
    (if (i32.le_u (local.get $r) (i32.const 16))
      (then (local.set $data (global.get $small)))
      (else
        ;; make room at $big, then fetch the pending result
        (local.set $need
          (i32.shr_u (i32.add (i32.add (global.get $big) (local.get $r)) (i32.const 65535))
                     (i32.const 16)))
        (if (i32.gt_u (local.get $need) (memory.size))
          (then (drop (memory.grow (i32.sub (local.get $need) (memory.size))))))
        (if (i32.ne (call $take (global.get $big) (local.get $r)) (local.get $r))
          (then (unreachable)))
        (local.set $data (global.get $big))))
    ;; Response{output: <data>}
    (local.set $start
      (i32.sub (local.get $data) (i32.add (call $varint_size (local.get $r)) (i32.const 1))))
    (i32.store8 (local.get $start) (i32.const 0x0a))
    (call $write_varint (i32.add (local.get $start) (i32.const 1)) (local.get $r))
    (call $span (local.get $start) (i32.add (local.get $data) (local.get $r)))))
