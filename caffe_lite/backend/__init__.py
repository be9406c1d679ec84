"""Device plumbing: the CPU/GPU mode switch, the random generator, and synced memory."""
from .state import (CPU, GPU, mode, set_mode_cpu, set_mode_gpu, set_device, device_id,
                   set_random_seed, rng, gpu_available)
from .memory import SyncedMemory

__all__ = ["CPU", "GPU", "mode", "set_mode_cpu", "set_mode_gpu", "set_device", "device_id",
           "set_random_seed", "rng", "gpu_available", "SyncedMemory"]
