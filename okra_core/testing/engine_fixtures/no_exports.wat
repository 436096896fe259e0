;; A module without the guest ABI's exports: only a memory.
(module (memory (export "memory") 1))
