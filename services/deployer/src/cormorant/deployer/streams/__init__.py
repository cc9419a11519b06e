"""Stream endpoints: Kafka checks at creation, consumer-lag autoscaling, the model swap."""
