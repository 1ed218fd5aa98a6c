"""Model building blocks shared by every architecture; attention goes only through ``flash_kernels``."""
