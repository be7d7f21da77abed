"""`vlrl plan`: a twin of the scheduler. The real ``RolloutManager`` and ``OverlapScheduler`` run against
cost-model engines, tools and trainer on a simulated clock, so hundreds of steps take seconds."""
