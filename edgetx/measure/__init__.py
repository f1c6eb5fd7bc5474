"""How fast and how good each variant is: bench (torch-free timings), the memory-bandwidth roofline,
and the accuracy x latency x size report."""
