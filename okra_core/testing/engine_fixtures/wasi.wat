;; ABI v1 guest that uses WASI. _initialize writes "init\n" to stdout. okra_handle does
;; what the last byte of the request envelope (of a non-empty input) asks:
;;   "w" writes "hello " + "stdout\n" (two iovecs, one fd_write) to stdout and "oops\n"
;;       to stderr, then tries fds 0, 3 and 5; output: 4 bytes, the errnos of the fd 0,
;;       3 and 5 writes and the byte count of the stdout write
;;   "e" asks for its environment, arguments and preopened directory (fd 3); output:
;;       7 u32 LE, environ_sizes_get's errno, count and buffer size, args_sizes_get's
;;       errno, count and buffer size, fd_prestat_get(3)'s errno
;;   "x" calls proc_exit(37)
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get"
    (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 100) "hello stdout\n")
  (data (i32.const 120) "oops\n")
  (data (i32.const 130) "init\n")

  (func $write (param $fd i32) (param $iovs i32) (param $count i32) (result i32)
    (call $fd_write (local.get $fd) (local.get $iovs) (local.get $count) (i32.const 80)))

  (func (export "_initialize")
    ;; iovec at 64: "init\n"
    (i32.store (i32.const 64) (i32.const 130))
    (i32.store (i32.const 68) (i32.const 5))
    (drop (call $write (i32.const 1) (i32.const 64) (i32.const 1))))

  (func (export "okra_abi_version") (result i32) (i32.const 1))
  (func (export "okra_buffer") (param i32) (result i32) (i32.const 1024))

  (func $writes (result i64)
    (local $written i32)
    ;; iovecs at 48: "hello " and "stdout\n"
    (i32.store (i32.const 48) (i32.const 100))
    (i32.store (i32.const 52) (i32.const 6))
    (i32.store (i32.const 56) (i32.const 106))
    (i32.store (i32.const 60) (i32.const 7))
    (drop (call $write (i32.const 1) (i32.const 48) (i32.const 2)))
    (local.set $written (i32.load (i32.const 80)))
    ;; iovec at 64: "oops\n"
    (i32.store (i32.const 64) (i32.const 120))
    (i32.store (i32.const 68) (i32.const 5))
    (drop (call $write (i32.const 2) (i32.const 64) (i32.const 1)))
    ;; Response{output: <4 bytes>} at 200
    (i32.store8 (i32.const 200) (i32.const 0x0a))
    (i32.store8 (i32.const 201) (i32.const 4))
    (i32.store8 (i32.const 202) (call $write (i32.const 0) (i32.const 64) (i32.const 1)))
    (i32.store8 (i32.const 203) (call $write (i32.const 3) (i32.const 64) (i32.const 1)))
    (i32.store8 (i32.const 204) (call $write (i32.const 5) (i32.const 64) (i32.const 1)))
    (i32.store8 (i32.const 205) (local.get $written))
    (i64.or (i64.shl (i64.const 200) (i64.const 32)) (i64.const 6)))

  (func $environment (result i64)
    ;; Response{output: <28 bytes>} at 398, so the values (which WASI wants aligned)
    ;; start at 400; the counts and sizes start as 0xaaaaaaaa, so a call that writes
    ;; nothing shows
    (i32.store8 (i32.const 398) (i32.const 0x0a))
    (i32.store8 (i32.const 399) (i32.const 28))
    (i32.store (i32.const 404) (i32.const 0xaaaaaaaa))
    (i32.store (i32.const 408) (i32.const 0xaaaaaaaa))
    (i32.store (i32.const 416) (i32.const 0xaaaaaaaa))
    (i32.store (i32.const 420) (i32.const 0xaaaaaaaa))
    (i32.store (i32.const 400) (call $environ_sizes_get (i32.const 404) (i32.const 408)))
    (i32.store (i32.const 412) (call $args_sizes_get (i32.const 416) (i32.const 420)))
    ;; the prestat struct goes to 512, out of the response
    (i32.store (i32.const 424) (call $fd_prestat_get (i32.const 3) (i32.const 512)))
    (i64.or (i64.shl (i64.const 398) (i64.const 32)) (i64.const 30)))

  (func (export "okra_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $op i32)
    (local.set $op
      (i32.load8_u (i32.sub (i32.add (local.get $ptr) (local.get $len)) (i32.const 1))))
    (if (i32.eq (local.get $op) (i32.const 0x77))  ;; "w"
      (then (return (call $writes))))
    (if (i32.eq (local.get $op) (i32.const 0x65))  ;; "e"
      (then (return (call $environment))))
    (if (i32.eq (local.get $op) (i32.const 0x78))  ;; "x"
      (then (call $proc_exit (i32.const 37))))
    (unreachable)))
