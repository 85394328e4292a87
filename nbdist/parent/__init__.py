"""Parent-side code: runs in the kernel (or the CLI's main process). Never initialises CUDA."""
