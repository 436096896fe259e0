;; ABI v1 guest that traps in the way its request asks. The selector is the last byte of
;; the request envelope (the last byte of a non-empty input):
;;   "u" unreachable                     "m" a load far outside memory (0xfffffff8)
;;   "e" a load straddling memory's end  "s" unbounded recursion (stack overflow)
;;   "d" integer division by zero        anything else: an empty response
(module
  (memory (export "memory") 2)
  (func (export "okra_abi_version") (result i32) (i32.const 1))
  (func (export "okra_buffer") (param i32) (result i32) (i32.const 1024))

  ;; Not a tail call: the addition after the call keeps every frame.
  (func $recurse (param $n i32) (result i32)
    (i32.add (call $recurse (i32.add (local.get $n) (i32.const 1))) (local.get $n)))

  (func (export "okra_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $op i32)
    (local.set $op
      (i32.load8_u (i32.sub (i32.add (local.get $ptr) (local.get $len)) (i32.const 1))))
    (if (i32.eq (local.get $op) (i32.const 0x75))  ;; "u"
      (then (unreachable)))
    ;; The results are stored, so no compiler may drop the trapping instruction.
    (if (i32.eq (local.get $op) (i32.const 0x6d))  ;; "m"
      (then (i32.store (i32.const 0) (i32.load (i32.const -8)))))
    (if (i32.eq (local.get $op) (i32.const 0x65))  ;; "e": bytes 131070..131073 of 131072
      (then (i32.store (i32.const 0) (i32.load (i32.const 131070)))))
    (if (i32.eq (local.get $op) (i32.const 0x73))  ;; "s"
      (then (i32.store (i32.const 0) (call $recurse (i32.const 0)))))
    (if (i32.eq (local.get $op) (i32.const 0x64))  ;; "d": 1 / (len - len)
      (then (i32.store (i32.const 0)
              (i32.div_u (i32.const 1) (i32.sub (local.get $len) (local.get $len))))))
    ;; Response{} (empty) at ptr
    (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))))
