"""The read side: recipients' own tokens, and the GraphQL API over canonical records."""
