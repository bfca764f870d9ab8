"""GPU performance levers and benchmarks: gated leave-one-out sampling, real-size model
builders with random weights, FLOP/MFU accounting, and the adaptive leave-one-out rule."""
