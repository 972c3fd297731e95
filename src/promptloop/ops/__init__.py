"""Operations: creating a workspace, serving Prefect and the MLflow UI."""
