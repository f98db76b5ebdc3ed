"""`acs-transfer serve`: the HTTP intake, its OpenAPI description, the outcome-event receiver and its token check."""
