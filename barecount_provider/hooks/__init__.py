"""BareCount hooks: one module per service. The runner operators' service calls live in hooks that subclass
the amazon provider's (``lambda_function``, ``ecs``, ``glue``, ``emr_serverless``, ``ec2``, ``ssm``);
``dlq`` is BareCount's own dead-letter queue hook."""
