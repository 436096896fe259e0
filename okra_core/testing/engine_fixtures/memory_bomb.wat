;; ABI v1 guest that takes all the memory it can: okra_handle grows memory one page at a
;; time until memory.grow fails (returns -1), then answers with what it got. The
;; response's output is 8 bytes: the pages grown in this call, then the memory's size
;; in pages, both little-endian u32. A limit stops it at the limit; without one it stops
;; at the declared maximum of 256 pages (16 MiB).
(module
  (memory (export "memory") 2 256)
  (func (export "okra_abi_version") (result i32) (i32.const 1))
  (func (export "okra_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "okra_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $grown i32)
    (block $full
      (loop $more
        (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (local.set $grown (i32.add (local.get $grown) (i32.const 1)))
        (br $more)))
    ;; Response{output: <grown u32><pages u32>} at 16
    (i32.store16 (i32.const 16) (i32.const 0x080a))
    (i32.store (i32.const 18) (local.get $grown))
    (i32.store (i32.const 22) (memory.size))
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 10))))
