"""The host: commands, mounts, connections, iSCSI, libvirt, checker, domain metadata.

Nothing in this package knows about Kubernetes. It is driven by ``reconcilers`` and can be tested on a
real host without a cluster. Every operation that may touch hung storage runs in a child process.
"""
