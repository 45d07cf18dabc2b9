"""Domain package of the UniAD staged-training pipeline: launching, checkpoints, logs and the mini model.

It never imports Airflow; the Airflow adapters in plugins/ call into it.
"""
