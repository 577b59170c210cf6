"""Background work: RQ queues, the worker entry point, the scheduler and the mail sandbox."""
