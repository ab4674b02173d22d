"""The retraining pipeline's building blocks, independent of Prefect and MLflow.

``flows/`` wraps these functions into Prefect tasks and flows; ``mend.registry``
talks to MLflow. Everything here works on plain files and an artifact store, so it
can be tested and reused without an orchestrator.

    config       the pipeline's typed configuration (``configs/pipeline-default.yaml``)
    data         resolve, validate, split, hash and store the editing data
    training     meta-train an editor in-process or through a launcher (DeepSpeed)
    scoping      fit the trained editor's scope model, publish the scoped editor
    evaluation   evaluation tables, FT/FT+L baselines, multi-edit curves and plots
    promotion    the champion/challenger gate
"""
