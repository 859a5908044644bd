"""The training engine: the pieces the loop in :meth:`brewkit.distillers.base.AbstractDistiller.train` is made of.

============================  ====================================================================
:mod:`~brewkit.engine.loop`       ``TrainingLoop.train``: the loop
:mod:`~brewkit.engine.session`    ``open_session``: what the loop sets up once
:mod:`~brewkit.engine.plan`       ``TrainPlan``: how many steps, and which ones log, check, checkpoint, call back
:mod:`~brewkit.engine.micro_batch`  ``MicroBatch``: one micro-batch and its normalisation factors
:mod:`~brewkit.engine.stepper`    ``OptimizerStepper``: backward scaling, clipping, non-finite checks, the step
:mod:`~brewkit.engine.step_logger`  ``StepLogger``: metrics file, TensorBoard, progress bar, console
:mod:`~brewkit.engine.stop`       ``StopSignal``: Ctrl-C / SIGTERM / ``request_stop()`` -> checkpoint and stop
:mod:`~brewkit.engine.hf_callbacks`  ``transformers.TrainerCallback`` objects in the loop, ``TrainerState``
:mod:`~brewkit.engine.cursor`     resumable data cursors
:mod:`~brewkit.engine.batches`    batch structure, masks, denominators
:mod:`~brewkit.engine.rng`        seeding and RNG state
============================  ====================================================================
"""
