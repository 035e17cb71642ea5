"""Side-by-side benchmarks of lvsuser against kernel forwarding, nftables DNAT and kernel IPVS.

`python3 -m bench` (or `lvsuser bench`) runs the network benchmark; `python3 -m pytest bench/`
runs the pytest-benchmark microbenchmarks of the datapath core. See bench/README.md.
"""
