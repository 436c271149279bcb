"""What a serving process sets up: allocator and thread pools."""

from __future__ import annotations


def test_the_serving_allocator_settings_are_taken_by_glibc():
    from cascade.serving.app import keep_large_allocations_on_the_heap

    assert keep_large_allocations_on_the_heap() is True


def test_a_serving_process_keeps_numpy_blas_on_one_thread_and_openmp_on_compute_threads():
    import faiss
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from cascade.config import AppConfig
    from cascade.serving.app import configure_serving_process

    before = {(pool["user_api"], pool["filepath"]): pool["num_threads"] for pool in threadpool_info()}
    torch_threads = torch.get_num_threads()
    try:
        configure_serving_process(AppConfig.model_validate({"serving": {"compute_threads": 2}}))
        pools = threadpool_info()
        own = [pool for pool in pools if pool.get("threading_layer") == "pthreads"]
        assert own and {pool["num_threads"] for pool in own} == {1}  # numpy's OpenBLAS
        on_openmp = [pool for pool in pools if pool not in own]  # OpenMP pools and BLAS running on them
        assert {pool["num_threads"] for pool in on_openmp} == {2}
        assert torch.get_num_threads() == 2
    finally:
        for (api, _), threads in before.items():
            threadpool_limits(threads, user_api=api)
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(torch_threads)
