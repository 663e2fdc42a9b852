"""mirasdsl search: proxy tasks, trainer and the Optuna study."""
