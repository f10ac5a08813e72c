import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread():
    # The models here are tiny: every op is a few microseconds of work, so a second intra-op
    # thread only adds synchronisation (and stalls badly when the cores are shared).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
