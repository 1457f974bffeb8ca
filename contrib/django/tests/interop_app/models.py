from django.db import models


class Character(models.Model):
    chronicle_id = models.IntegerField(default=1)
    name = models.CharField(max_length=100)

    class Meta:
        app_label = "interop_app"
