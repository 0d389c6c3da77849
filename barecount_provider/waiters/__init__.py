"""BareCount's custom boto waiters, in the amazon provider's custom-waiter format (``<client type>.json``).

``ssm.json``: ``ssm_agent_online``, DescribeInstanceInformation until ``host_count`` of the filtered hosts
report PingStatus ``Online`` (botocore has no waiter for it). Loaded by :class:`~barecount_provider.hooks.ssm.
BareCountSsmHook`.
"""
