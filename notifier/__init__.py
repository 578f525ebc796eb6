"""The webhook notifier (`diffusetv notifier`): sends the deliveries that status changes enqueue in Redis."""
