"""What runs in Airflow's processes: the task try's orchestration (task_side, entries), the pre-fork
preload (preload), the outbox the task
process writes and the forwarder that empties it, and the scheduler's side (scheduler_side, sealing).

The runtime wires the domain packages (telemetry, evidence, cost, recovery), which never import each other
(docs/architecture.md); only the faces (listeners, plugins, cli, api, operators) import the runtime."""
