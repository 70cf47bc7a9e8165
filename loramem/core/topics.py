"""What names a topic, shared by the HTTP contract and routing."""

TOPIC_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
# Reserved: as a request's topic it asks for routing by content; it never names a topic.
AUTO_TOPIC = "auto"
