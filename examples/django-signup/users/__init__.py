"""The users app: signup API and the tasks a signup queues."""
