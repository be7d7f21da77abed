"""The sandbox every model-written action runs in: a pool of isolated worker processes.

``SandboxPool: (tool call | code, images, metadata) --> ActionResult``. Workers run under
bubblewrap (read-only root, private /tmp as the working directory, no network, own PID
namespace, cleared environment, home directory hidden), each as its own unprivileged
uid with one process allowed (no fork, no threads), an address-space cap and a CPU-time
cap; the pool enforces a wall-clock timeout and replaces a worker that crashed or timed
out. Messages are a JSON header plus raw RGB image bytes — nothing the trainer unpickles.
"""
