"""Extra report sections: each module here may define `sections(results) -> list[Section]`
(see privlab.report.Section); the report discovers them, so a family adds its figures without
touching the template."""
