"""The trusted zone, observed: its two source assets, the sensor that follows it and the job it launches."""
