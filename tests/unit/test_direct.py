"""The benchmark's in-process ceiling runs the same denoiser as the handler and counts every image."""

from bench.direct import bench_request, run_direct


def test_direct_run_counts_images_and_calls(tiny_loaded):
    summary = run_direct(tiny_loaded, 2, 4, lambda i: bench_request(i, 64, 64, 2), guidance_scale=5.0)
    assert summary["images"] == 4 and summary["mean_executed_batch"] == 2
    assert summary["images_per_s"] > 0 and summary["mean_handler_s"] > 0
