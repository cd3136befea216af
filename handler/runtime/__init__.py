"""The serving runtime: the core (parse / run / render / metrics / close) and the engine that owns every
request's lifecycle; grouping, the side worker, metrics."""
