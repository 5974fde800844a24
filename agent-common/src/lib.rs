//! Types shared by the eBPF program (`agent-ebpf`) and the agent that reads its maps.
#![no_std]
