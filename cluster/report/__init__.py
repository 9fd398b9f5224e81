"""What a run measured, for people: tables read from the committed datasets."""
