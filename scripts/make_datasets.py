#!/usr/bin/env python
"""Regenerate every bundled dataset in eval/data from the templates below.

    python scripts/make_datasets.py [--out eval/data]

Output is deterministic: each dataset draws from its own seeded generator, so editing one
dataset's templates leaves the others byte-identical. Behaviour items pair two completions to
the same question that differ mainly in the behaviour (same frame, same slots), so a contrast
isolates the behaviour rather than the content.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")
SEED = 1729
MAX_WORDS = 22
OUT = Path(__file__).resolve().parents[1] / "eval" / "data"


# --------------------------------------------------------------------------- sentiment

SENTIMENT_TOPICS: list[tuple[str, list[tuple[str, str]]]] = [
    ("a rainy afternoon", [
        ("it is the perfect excuse to curl up with a good book", "everything turns damp, grey and dull"),
        ("the sound of rain on the window is so calming", "the constant drizzle ruins any plans you had")]),
    ("the morning commute", [
        ("it gives you quiet time to listen to music", "the crowded trains leave everyone tired and tense"),
        ("you get to watch the city wake up", "the traffic makes every trip drag on")]),
    ("cooking dinner at home", [
        ("you can make exactly what you love", "the washing up afterwards never seems to end"),
        ("the kitchen fills with wonderful smells", "something always burns or comes out bland")]),
    ("a trip to the dentist", [
        ("you leave with a fresh, healthy smile", "the drilling noise alone ruins the day"),
        ("the staff are usually kind and reassuring", "the waiting room is full of nervous dread")]),
    ("working from home", [
        ("you skip the commute and work in comfort", "the days blur together within the same four walls"),
        ("you can take your breaks in the garden", "it gets lonely without colleagues around")]),
    ("a long train journey", [
        ("the scenery rolling past is beautiful", "the hours crawl by in a cramped seat"),
        ("it is a rare chance to read and daydream", "delays and crowded carriages wear you out")]),
    ("learning to play the guitar", [
        ("every new chord feels like a small victory", "your fingers hurt and progress is painfully slow"),
        ("you can soon play songs for your friends", "the same clumsy mistakes keep coming back")]),
    ("moving to a new city", [
        ("it opens the door to new friends and places", "you lose the people and places you know"),
        ("every street feels like an adventure", "everything feels strange and unwelcoming for months")]),
    ("a Monday morning", [
        ("it is a fresh start for the whole week", "the weekend is over and the chores pile up"),
        ("you can set new goals with plenty of energy", "everyone is tired and grumpy")]),
    ("gardening", [
        ("watching your plants grow is deeply rewarding", "pests and weeds undo all your hard work"),
        ("time outdoors in the fresh air feels great", "it leaves you with a sore back and dirty hands")]),
    ("a family reunion", [
        ("it brings everyone together to share stories", "old arguments always seem to resurface"),
        ("the children have a wonderful time playing", "the day is mostly awkward small talk")]),
    ("running in the park", [
        ("the fresh air clears your head", "it mostly means sore legs and heavy breathing"),
        ("you feel energised for the rest of the day", "the weather rarely cooperates")]),
    ("a snowy winter day", [
        ("everything looks calm and sparkling", "the roads turn icy and dangerous"),
        ("there is sledding and hot chocolate to enjoy", "the cold seeps right into your bones")]),
    ("visiting a museum", [
        ("there is always something fascinating to discover", "the crowds make it hard to see anything"),
        ("it sparks your curiosity about history", "your feet ache after an hour of shuffling")]),
    ("a camping trip", [
        ("sleeping under the stars is magical", "the tent leaks and the bugs never leave you alone"),
        ("cooking over a fire is great fun", "you wake up cold, stiff and damp")]),
    ("starting a new job", [
        ("you learn new skills and meet new people", "the pressure to prove yourself is exhausting"),
        ("it is a chance to grow your career", "everything is confusing and nobody explains anything")]),
    ("a weekend at the beach", [
        ("the sea breeze and sunshine feel wonderful", "the sand gets everywhere and the sun burns"),
        ("swimming in the waves is so refreshing", "the beach is packed and noisy")]),
    ("baking bread", [
        ("the smell of a fresh loaf is unbeatable", "the dough rarely rises the way it should"),
        ("kneading the dough is surprisingly relaxing", "it takes hours and often comes out dense")]),
    ("a birthday party", [
        ("it is a happy celebration with people you love", "it is mostly noise, mess and forced smiles"),
        ("the cake and games make everyone cheerful", "someone always ends up feeling left out")]),
    ("doing the laundry", [
        ("fresh, clean clothes feel wonderful", "the pile of clothes never seems to shrink"),
        ("folding warm towels is oddly satisfying", "socks keep vanishing and shirts keep shrinking")]),
    ("a thunderstorm at night", [
        ("the flashes of lightning are spectacular", "the noise keeps everyone awake"),
        ("it feels cosy to listen from under a blanket", "it can knock out the power for hours")]),
    ("reading a long novel", [
        ("you get lost in a whole new world", "it drags on for hundreds of pages"),
        ("the characters start to feel like friends", "you forget the plot halfway through")]),
    ("a visit to the zoo", [
        ("seeing the animals up close is a delight", "the animals often look bored and sad"),
        ("children love every minute of it", "the queues and prices spoil the day")]),
    ("learning a new language", [
        ("every new word opens up a different culture", "the grammar rules feel endless and confusing"),
        ("you can finally talk with people abroad", "you keep forgetting what you learned")]),
    ("a quiet evening alone", [
        ("it is a lovely chance to rest and recharge", "the silence quickly turns lonely"),
        ("you can do exactly what you like", "the hours feel empty and long")]),
    ("the first day of school", [
        ("children meet new friends and teachers", "everyone is anxious and overwhelmed"),
        ("the fresh notebooks and pencils feel exciting", "the early alarm comes as a nasty shock")]),
    ("a road trip with friends", [
        ("the laughter and singing make the miles fly by", "hours in a hot car lead to arguments"),
        ("you stumble upon charming little towns", "someone always gets carsick or lost")]),
    ("cleaning the house", [
        ("a tidy home feels calm and fresh", "the dust is back the very next day"),
        ("it is satisfying to see everything sparkle", "it eats up your whole free afternoon")]),
    ("a picnic in the countryside", [
        ("the food tastes better in the open air", "the wasps and ants invade every sandwich"),
        ("the views are peaceful and green", "the ground is damp and uncomfortable")]),
    ("going to the gym", [
        ("you leave feeling strong and energised", "the machines are crowded and the place smells"),
        ("you can see real progress every week", "you mostly feel sore and out of breath")]),
    ("an autumn walk in the woods", [
        ("the golden leaves are beautiful", "the paths turn muddy and slippery"),
        ("the crisp air is so refreshing", "it gets dark and chilly far too early")]),
    ("a job interview", [
        ("it is a chance to show what you can do", "the nerves make it a stressful ordeal"),
        ("you often learn something useful about yourself", "the tricky questions leave you flustered")]),
    ("a trip to the supermarket", [
        ("you can discover tasty new foods", "the queues and the noise are draining"),
        ("filling the fridge feels satisfying", "prices keep climbing every week")]),
    ("a summer music festival", [
        ("the music and atmosphere are unforgettable", "the crowds, mud and queues are unbearable"),
        ("you share the fun with thousands of people", "you barely sleep and the toilets are awful")]),
    ("taking the bus", [
        ("you can relax and watch the world go by", "it is slow, crowded and often late"),
        ("it is cheap and easy on the environment", "you stand squashed for most of the ride")]),
    ("keeping a diary", [
        ("it helps you understand your own thoughts", "it feels like a chore you keep putting off"),
        ("old entries bring back fond memories", "old entries mostly bring back embarrassing moments")]),
    ("painting a room", [
        ("a new colour makes the whole space feel fresh", "the paint splatters everywhere and takes ages to dry"),
        ("it is fun to transform a room yourself", "the fumes give you a headache")]),
    ("a holiday abroad", [
        ("you taste new food and see amazing places", "lost luggage and delays spoil the trip"),
        ("you come home with wonderful memories", "you come home more tired than before")]),
    ("adopting a puppy", [
        ("a puppy brings so much joy and affection", "the chewed shoes and night-time crying are exhausting"),
        ("the daily walks keep you active", "training takes far more patience than expected")]),
    ("a Sunday afternoon", [
        ("it is the perfect time for a long lunch", "the dread of Monday hangs over everything"),
        ("there is time to relax with family", "the hours slip away with nothing done")]),
    ("cycling to work", [
        ("you get exercise and fresh air every day", "you arrive sweaty or soaked by the rain"),
        ("you glide past the traffic jams", "the busy roads make it nerve-racking")]),
    ("a concert in the park", [
        ("live music under the open sky is wonderful", "the sound is poor and the crowd is rowdy"),
        ("everyone sings and dances together", "you can barely see the stage")]),
    ("volunteering at an animal shelter", [
        ("helping the animals is truly uplifting", "it can be emotionally draining"),
        ("you meet kind and generous people", "there is never enough time or money to help them all")]),
    ("the holiday season", [
        ("the lights and gatherings are so cheerful", "the shopping and stress become overwhelming"),
        ("families come together to celebrate", "the crowds and bills pile up")]),
    ("waking up early", [
        ("you enjoy the calm, quiet hours of the morning", "you spend the whole day tired and groggy"),
        ("you have extra time to get things done", "the dark, cold mornings are miserable")]),
]

SENTIMENT_ADJECTIVES = [
    ("wonderful", "dreadful"), ("delightful", "miserable"), ("lovely", "awful"), ("fantastic", "terrible"),
    ("great", "grim"), ("uplifting", "depressing"), ("refreshing", "draining"), ("charming", "dreary"),
    ("brilliant", "unbearable"), ("joyful", "gloomy"), ("pleasant", "unpleasant"), ("marvellous", "dismal"),
]

SENTIMENT_GENERIC_REASONS = [
    ("it always seems to lift people's spirits", "it always seems to drag people's spirits down"),
    ("there is so much to enjoy about it", "there is very little to enjoy about it"),
    ("it tends to leave you smiling", "it tends to leave you frustrated"),
    ("the good moments easily outweigh the bad", "the bad moments easily outweigh the good"),
    ("it usually turns out better than expected", "it usually turns out worse than expected"),
    ("it makes an ordinary day feel special", "it makes an ordinary day feel even heavier"),
    ("it is full of small pleasures", "it is full of small annoyances"),
    ("most people come away happy", "most people come away disappointed"),
]

SENTIMENT_LEADS = ["", "Honestly, ", "To be honest, ", "Overall, ", "Personally, ", "Well, "]

SENTIMENT_FRAMES = [
    "{lead}{t} is {adj}, because {reason}.",
    "{lead}I find {t} {adj}, since {reason}.",
    "{T} sounds {adj} to me, as {reason}.",
    "{lead}I think {t} is {adj}; {reason}.",
    "Oh, {t} is {adj}, because {reason}.",
    "{T}? It is {adj}, since {reason}.",
    "In my experience {t} is {adj}, because {reason}.",
    "{T} is usually {adj}, as {reason}.",
    "My view is that {t} is {adj}, since {reason}.",
]

SENTIMENT_QUESTIONS = [
    "What do you think of {t}?",
    "How do you feel about {t}?",
    "What's your opinion on {t}?",
    "Can you describe {t} in one sentence?",
    "Is {t} something to look forward to?",
    "How would you sum up {t}?",
    "My friend asked me about {t}. What should I tell them?",
    "What is {t} really like?",
    "Give me your honest take on {t}.",
    "Would you say {t} is worth it?",
]


def sentiment_rows(rng: random.Random, count: int) -> list[dict]:
    """Upbeat versus gloomy answers built from one frame, so only the sentiment differs."""
    def answer(topic: str, specific: list[tuple[str, str]]) -> tuple[str, str]:
        frame, lead = rng.choice(SENTIMENT_FRAMES), rng.choice(SENTIMENT_LEADS)
        adjectives = rng.choice(SENTIMENT_ADJECTIVES)
        reasons = rng.choice(specific) if rng.random() < 0.7 else rng.choice(SENTIMENT_GENERIC_REASONS)
        return tuple(_sentence(frame.format(lead=lead, t=topic, T=_capital(topic), adj=adj, reason=reason))
                     for adj, reason in zip(adjectives, reasons))

    def row(question: str, topic: tuple[str, list[tuple[str, str]]]) -> dict:
        positive, negative = _retry(lambda: answer(*topic))
        return _behaviour_row(question, positive, negative, topic=topic[0])

    return _balanced_rows(rng, count, SENTIMENT_TOPICS, SENTIMENT_QUESTIONS,
                          lambda template, topic: template.format(t=topic[0]), row)


# ------------------------------------------------------------- shared "how do I" goals
# goal, formal advice, casual advice, plain English advice, the same advice in French. Advice
# is a bare verb phrase, so any frame can take it; French advice only goes into impersonal
# frames ("Le mieux est de ..."), so reflexive verbs and possessives stay correct.

GOALS: list[tuple[str, str, str, str, str]] = [
    ("sleep better",
     "maintain a consistent bedtime and avoid screens in the evening",
     "hit the sack at the same time every night and ditch your phone",
     "go to bed at the same time every night",
     "aller au lit à la même heure chaque soir"),
    ("save money each month",
     "establish a monthly budget and review your expenses regularly",
     "keep tabs on what you spend and cut the stuff you don't need",
     "write down what you spend each week",
     "noter ses dépenses chaque semaine"),
    ("learn to cook",
     "begin with a few simple recipes and practise them methodically",
     "grab a few easy recipes and mess around in the kitchen",
     "start with simple recipes and cook a little every day",
     "commencer par des recettes simples et cuisiner un peu chaque jour"),
    ("stay focused while studying",
     "work in uninterrupted intervals and silence all notifications",
     "put your phone away and study in short bursts",
     "study in short sessions with the phone in another room",
     "étudier par courtes séances avec le téléphone dans une autre pièce"),
    ("make new friends",
     "participate in community activities that reflect your interests",
     "join a club and hang out wherever people who like your stuff go",
     "join a club for something you enjoy",
     "rejoindre un club consacré à une activité que l'on aime"),
    ("keep my plants alive",
     "ensure adequate light and water them according to their needs",
     "give them loads of sun and don't drown them",
     "give them enough light and water them only when the soil is dry",
     "leur donner assez de lumière et les arroser seulement quand la terre est sèche"),
    ("get fit",
     "undertake regular moderate exercise and monitor your progress",
     "get moving a bit every day and keep at it",
     "walk or run for half an hour most days",
     "marcher ou courir une demi-heure presque tous les jours"),
    ("wake up earlier",
     "retire to bed earlier and place your alarm across the room",
     "crash earlier and stick your alarm where you gotta get up to hit it",
     "go to bed earlier and put the alarm across the room",
     "aller au lit plus tôt et placer le réveil loin du lit"),
    ("write a good essay",
     "prepare a clear outline before composing the first draft",
     "jot down a quick plan and then start writing",
     "make a clear plan before writing",
     "faire un plan clair avant d'écrire"),
    ("reduce stress",
     "practise deep breathing and schedule regular periods of rest",
     "take some deep breaths and chill out now and then",
     "breathe slowly and take short breaks during the day",
     "respirer lentement et faire de courtes pauses dans la journée"),
    ("drink more water",
     "keep a water bottle at hand and drink at regular intervals",
     "carry a bottle around and sip on it all day",
     "carry a bottle of water and drink a little every hour",
     "garder une bouteille d'eau sur soi et boire un peu chaque heure"),
    ("read more books",
     "allocate a fixed period each day to reading",
     "grab a book instead of scrolling before bed",
     "read a few pages every evening before bed",
     "lire quelques pages chaque soir avant de dormir"),
    ("learn a new language",
     "study daily and converse with native speakers whenever possible",
     "practise a bit every day and chat with native speakers",
     "practise a little every day and speak with native speakers",
     "pratiquer un peu chaque jour et parler avec des locuteurs natifs"),
    ("keep my room tidy",
     "return every item to its designated place immediately after use",
     "put stuff back where it goes right away",
     "put things back in their place right after using them",
     "remettre les choses à leur place juste après les avoir utilisées"),
    ("prepare for a job interview",
     "research the organisation thoroughly and rehearse your responses",
     "look the company up and practise your answers out loud",
     "learn about the company and practise your answers",
     "se renseigner sur l'entreprise et répéter ses réponses"),
    ("be more productive",
     "prioritise your tasks and address the most important one first",
     "knock out the big task first thing and skip the busywork",
     "do the most important task first each morning",
     "faire la tâche la plus importante en premier chaque matin"),
    ("eat more healthily",
     "incorporate more vegetables and reduce processed foods",
     "load up on veggies and go easy on the junk food",
     "eat more vegetables and fewer snacks",
     "manger plus de légumes et moins de grignotages"),
    ("take better photos",
     "observe the light carefully and compose each shot deliberately",
     "watch the light and stop plonking everything in the middle",
     "pay attention to the light and avoid centring every subject",
     "faire attention à la lumière et éviter de toujours centrer le sujet"),
    ("remember names",
     "repeat each name aloud upon introduction and associate it with a detail",
     "say the name back right away and link it to something funny",
     "repeat the name aloud when you meet someone",
     "répéter le prénom à voix haute lors de la rencontre"),
    ("stop procrastinating",
     "divide each task into manageable steps and commence with the first",
     "break it into tiny bits and knock out the first one",
     "break the task into small steps and start with the easiest",
     "découper la tâche en petites étapes et commencer par la plus facile"),
    ("keep in touch with old friends",
     "schedule regular calls and remember significant occasions",
     "shoot them a message now and then and remember their birthdays",
     "send them a message every few weeks",
     "leur envoyer un message toutes les deux ou trois semaines"),
    ("improve my handwriting",
     "practise slowly each day, forming each letter with care",
     "slow down and scribble a page every day",
     "write slowly and practise a page every day",
     "écrire lentement et s'exercer sur une page chaque jour"),
    ("travel on a budget",
     "book in advance and travel outside the peak season",
     "book early and go when it's not crazy busy",
     "book early and travel outside the busy season",
     "réserver tôt et voyager hors saison"),
    ("learn to swim",
     "enrol in lessons with a qualified instructor",
     "sign up for some lessons and get in the pool",
     "take lessons with a good teacher",
     "prendre des cours avec un bon moniteur"),
    ("get better at public speaking",
     "rehearse thoroughly and seek opportunities to present",
     "practise a bunch and grab every chance to talk in front of people",
     "practise often and speak in front of small groups first",
     "s'entraîner souvent et parler d'abord devant de petits groupes"),
    ("make my mornings less rushed",
     "prepare your belongings the evening before",
     "get your stuff ready the night before",
     "prepare everything the evening before",
     "tout préparer la veille au soir"),
    ("spend less time on my phone",
     "disable non-essential notifications and set daily limits",
     "turn off the notifications and leave your phone in another room",
     "turn off notifications and keep the phone out of reach",
     "couper les notifications et garder le téléphone hors de portée"),
    ("become a better listener",
     "allow others to finish speaking and ask considered questions",
     "let people finish talking and ask them stuff",
     "let people finish and ask them questions",
     "laisser les autres finir de parler et leur poser des questions"),
    ("learn to play the piano",
     "practise scales daily under the guidance of a teacher",
     "mess around with scales every day and maybe get a teacher",
     "practise a little every day with a teacher",
     "s'exercer un peu chaque jour avec un professeur"),
    ("cook rice properly",
     "rinse the rice and use the correct ratio of water",
     "rinse it first and don't drown it in water",
     "rinse the rice and use the right amount of water",
     "rincer le riz et utiliser la bonne quantité d'eau"),
    ("keep my car in good shape",
     "adhere to the recommended maintenance schedule",
     "get it checked a lot and don't skip oil changes",
     "have it checked regularly and change the oil on time",
     "la faire vérifier régulièrement et changer l'huile à temps"),
    ("be on time more often",
     "allow additional time for every journey",
     "leave ten minutes earlier than you think",
     "leave ten minutes earlier than you need to",
     "partir dix minutes plus tôt que nécessaire"),
    ("start running",
     "commence with short intervals of running and walking",
     "start slow and mix in some walking",
     "start with short runs mixed with walking",
     "commencer par de courtes sorties en alternant course et marche"),
    ("feel less lonely",
     "engage in group activities and contact friends regularly",
     "hit up your friends more and join some group stuff",
     "join group activities and call friends often",
     "participer à des activités de groupe et appeler souvent ses amis"),
    ("decorate a small flat",
     "select light colours and multifunctional furniture",
     "go for light colours and furniture that does double duty",
     "use light colours and furniture with storage",
     "choisir des couleurs claires et des meubles avec du rangement"),
    ("learn to draw",
     "study the fundamentals of form and sketch daily",
     "doodle every day and copy stuff you like",
     "sketch every day and copy simple shapes",
     "dessiner chaque jour et copier des formes simples"),
    ("grow tomatoes",
     "plant them in a sunny position and water them consistently",
     "stick them somewhere sunny and water them loads",
     "plant them in a sunny spot and water them regularly",
     "les planter au soleil et les arroser régulièrement"),
    ("study for an exam",
     "review your notes systematically and attempt past papers",
     "go over your notes and smash through some old tests",
     "review your notes and practise with old exams",
     "revoir ses notes et s'entraîner avec d'anciens examens"),
    ("negotiate a better salary",
     "research typical salaries and present your achievements clearly",
     "check what others get paid and show off what you've done",
     "find out the usual pay and explain your results clearly",
     "se renseigner sur les salaires habituels et présenter clairement ses résultats"),
    ("stop snoozing my alarm",
     "position your alarm out of reach and rise immediately",
     "put the alarm across the room so you have to get up",
     "put the alarm out of reach and get up at once",
     "mettre le réveil hors de portée et se lever aussitôt"),
    ("make better coffee at home",
     "use freshly ground beans and measure them precisely",
     "grind fresh beans and stop eyeballing the amount",
     "use freshly ground beans and measure them carefully",
     "utiliser des grains fraîchement moulus et bien les doser"),
    ("organise my week",
     "plan your commitments every Sunday in a diary",
     "jot down your week every Sunday so nothing sneaks up on you",
     "write a plan for the week every Sunday",
     "écrire un plan de la semaine chaque dimanche"),
    ("help a friend who feels sad",
     "listen attentively and offer your support without judgement",
     "be there, listen and don't judge",
     "listen carefully and offer support without judging",
     "écouter attentivement et offrir son soutien sans juger"),
    ("learn to type faster",
     "practise touch typing daily with a dedicated programme",
     "play a few typing games every day and stop looking at the keys",
     "practise touch typing for a few minutes each day",
     "s'entraîner à taper sans regarder quelques minutes par jour"),
    ("keep my inbox under control",
     "address each message promptly and archive those already handled",
     "deal with emails right away and archive the rest",
     "answer emails quickly and archive the old ones",
     "répondre vite aux courriels et archiver les anciens"),
    ("choose a good book",
     "consult reviews and ask a librarian for recommendations",
     "check some reviews or ask a librarian",
     "read a few reviews and ask a librarian",
     "lire quelques critiques et demander conseil à un bibliothécaire"),
    ("calm down before an exam",
     "breathe slowly and remind yourself of your preparation",
     "take a few deep breaths and remember you've got this",
     "breathe slowly and remember how much you have prepared",
     "respirer lentement et se rappeler tout le travail accompli"),
    ("make a good first impression",
     "arrive punctually, dress appropriately and offer a warm greeting",
     "show up on time, look decent and smile",
     "arrive on time and greet people with a smile",
     "arriver à l'heure et saluer les gens avec un sourire"),
    ("get more sunlight in winter",
     "take a walk outdoors during the brightest hours of the day",
     "get outside around lunchtime when it's brightest",
     "go for a walk outside around midday",
     "faire une promenade dehors vers midi"),
    ("bake a fluffy cake",
     "measure your ingredients precisely and avoid overmixing the batter",
     "measure stuff properly and don't overdo the mixing",
     "measure the ingredients carefully and do not overmix the batter",
     "bien peser les ingrédients et ne pas trop mélanger la pâte"),
    ("stay warm in winter",
     "wear several layers and keep your extremities covered",
     "throw on a bunch of layers and grab a hat and gloves",
     "wear several layers and a warm hat",
     "porter plusieurs couches et un bonnet chaud"),
    ("learn basic first aid",
     "enrol in a certified first aid course",
     "sign up for a quick first aid class",
     "take a short first aid course",
     "suivre une courte formation aux premiers secours"),
    ("make my home smell nice",
     "ventilate the rooms daily and use natural fragrances",
     "open the windows a lot and grab some nice candles",
     "open the windows every day and add a few fresh flowers",
     "aérer chaque jour et mettre quelques fleurs fraîches"),
    ("fall asleep faster",
     "avoid caffeine in the afternoon and keep the bedroom dark",
     "skip coffee after lunch and make your room super dark",
     "avoid coffee after lunch and keep the bedroom dark",
     "éviter le café après le déjeuner et garder la chambre sombre"),
    ("pack for a weekend trip",
     "compile a list in advance and select versatile clothing",
     "make a quick list and grab clothes that go with everything",
     "make a list and pack clothes that go together",
     "faire une liste et choisir des vêtements faciles à assortir"),
    ("write a thank-you note",
     "express your gratitude specifically and keep the message concise",
     "say what you loved and keep it short and sweet",
     "say exactly what you are thankful for and keep it short",
     "dire précisément ce pour quoi on est reconnaissant et rester bref"),
    ("save energy at home",
     "switch off appliances when not in use and lower the thermostat slightly",
     "turn stuff off when you're done and turn the heating down a bit",
     "switch things off when not in use and lower the heating a little",
     "éteindre les appareils inutilisés et baisser un peu le chauffage"),
    ("get better at chess",
     "study classic games and analyse your own mistakes",
     "play loads and look back at where you messed up",
     "play often and review your mistakes after each game",
     "jouer souvent et revoir ses erreurs après chaque partie"),
    ("look after my skin",
     "apply sunscreen daily and keep your skin moisturised",
     "slap on sunscreen every day and keep it moisturised",
     "wear sunscreen every day and use a simple moisturiser",
     "mettre de la crème solaire chaque jour et utiliser une crème hydratante simple"),
    ("start a small garden",
     "commence with a few hardy plants in a sunny location",
     "start small with a few tough plants somewhere sunny",
     "start with a few easy plants in a sunny place",
     "commencer avec quelques plantes faciles dans un endroit ensoleillé"),
]

# --------------------------------------------------------------------------- formality

FORMAL_FRAMES = [
    "I would recommend that you {a}.",
    "It would be advisable to {a}.",
    "The most effective approach is to {a}.",
    "I would suggest that you {a}, as this generally yields good results.",
    "Certainly. It would be prudent to {a}.",
    "In my assessment, the best course of action is to {a}.",
    "One sensible approach would be to {a}.",
    "You may wish to {a}; this is widely regarded as effective.",
    "It is generally advisable to {a}.",
    "I would respectfully suggest that you {a}.",
]

CASUAL_FRAMES = [
    "Just {a}, honestly it works!",
    "Easy, just {a}, and you're good.",
    "Oh, try to {a}, it totally helps.",
    "Honestly I'd just {a}, no big deal.",
    "Yeah, just {a}, then see how it goes!",
    "Tbh just {a}, works like a charm.",
    "Haha, just {a}, it's super easy.",
    "Try to {a}, seriously, it's a game changer.",
    "Okay so just {a}, trust me.",
    "Simple: {a}, and you're sorted!",
]

FORMALITY_QUESTIONS = [
    "How can I {g}?",
    "What's the best way to {g}?",
    "Do you have any tips to help me {g}?",
    "I want to {g}. Where should I start?",
    "What should I do to {g}?",
    "Is there an easy way to {g}?",
    "Could you give me advice on how to {g}?",
]


def formality_rows(rng: random.Random, count: int) -> list[dict]:
    """The same advice in a formal and in a casual register."""
    formal_frames, casual_frames = _Decks(rng, FORMAL_FRAMES), _Decks(rng, CASUAL_FRAMES)

    def answer(goal: tuple[str, ...]) -> tuple[str, str]:
        formal = formal_frames.draw(goal[0]).format(a=goal[1])
        casual = casual_frames.draw(goal[0]).format(a=goal[2])
        return _sentence(formal), _sentence(casual)

    def row(question: str, goal: tuple[str, ...]) -> dict:
        formal, casual = _retry(lambda: answer(goal))
        return _behaviour_row(question, formal, casual, topic=goal[0])

    return _balanced_rows(rng, count, GOALS, FORMALITY_QUESTIONS,
                          lambda template, goal: template.format(g=goal[0]), row)


# ----------------------------------------------------------------------------- french

FRENCH_FRAMES = [  # (English, French); French frames are impersonal, "{de}" elides before a vowel
    ("the best thing to do is to {a}.", "le mieux est {de}{a}."),
    ("it is often enough to {a}.", "il suffit souvent {de}{a}."),
    ("a good idea is to {a}.", "une bonne idée est {de}{a}."),
    ("it is better to {a}.", "il vaut mieux {a}."),
    ("it is wise to {a}.", "il est sage {de}{a}."),
    ("my advice is to {a}.", "mon conseil est {de}{a}."),
    ("the secret is to {a}.", "le secret est {de}{a}."),
    ("it really helps to {a}.", "cela aide vraiment {de}{a}."),
    ("it is worth trying to {a}.", "cela vaut la peine {de}{a}."),
    ("the simplest way is to {a}.", "le plus simple est {de}{a}."),
]

FRENCH_LEADS = [("", ""), ("Honestly, ", "Honnêtement, "), ("In my opinion, ", "À mon avis, "),
                ("Generally, ", "En général, "), ("From experience, ", "Par expérience, ")]

FRENCH_QUESTIONS = [
    "What's a simple way to {g}?",
    "Any advice on how to {g}?",
    "How should I {g}?",
    "What would you suggest if I want to {g}?",
    "I'd like to {g}. Any ideas?",
    "What helps if I want to {g}?",
]


def french_rows(rng: random.Random, count: int) -> list[dict]:
    """The same advice in French and in English, to an English question."""
    frames = _Decks(rng, FRENCH_FRAMES)

    def answer(goal: tuple[str, ...]) -> tuple[str, str]:
        (english, french), (lead_en, lead_fr) = frames.draw(goal[0]), rng.choice(FRENCH_LEADS)
        de = "d'" if goal[4][0] in "aeiouhéèêàâîôû" else "de "
        return (_sentence(lead_fr + french.format(a=goal[4], de=de)),
                _sentence(lead_en + english.format(a=goal[3])))

    def row(question: str, goal: tuple[str, ...]) -> dict:
        french, english = _retry(lambda: answer(goal))
        return _behaviour_row(question, french, english, topic=goal[0])

    return _balanced_rows(rng, count, GOALS, FRENCH_QUESTIONS,
                          lambda template, goal: template.format(g=goal[0]), row)


# ------------------------------------------------------------------------------ truth

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("China", "Beijing"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Australia", "Canberra"),
    ("Russia", "Moscow"), ("the United Kingdom", "London"), ("Portugal", "Lisbon"), ("Greece", "Athens"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Ireland", "Dublin"),
    ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Kenya", "Nairobi"),
    ("Argentina", "Buenos Aires"), ("Peru", "Lima"), ("Thailand", "Bangkok"), ("South Korea", "Seoul"),
    ("India", "New Delhi"), ("Cuba", "Havana"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"),
    ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"),
    ("the Philippines", "Manila"), ("Colombia", "Bogotá"), ("the Czech Republic", "Prague"),
    ("Brazil", "Brasília"), ("Mexico", "Mexico City"), ("Chile", "Santiago"), ("Switzerland", "Bern"),
]

FACTS = [  # (true, false) pairs on everyday knowledge
    ("Water freezes at 0 degrees Celsius.", "Water freezes at 50 degrees Celsius."),
    ("A week has seven days.", "A week has nine days."),
    ("Cats are mammals.", "Cats are reptiles."),
    ("The sun rises in the east.", "The sun rises in the west."),
    ("Spiders have eight legs.", "Spiders have six legs."),
    ("A year has twelve months.", "A year has ten months."),
    ("Bees make honey.", "Cows make honey."),
    ("Penguins are birds.", "Penguins are fish."),
    ("The Pacific is an ocean.", "The Pacific is a desert."),
    ("A triangle has three sides.", "A triangle has four sides."),
    ("A square has four equal sides.", "A square has five equal sides."),
    ("Fish breathe through gills.", "Fish breathe through feathers."),
    ("The moon orbits the Earth.", "The Earth orbits the moon."),
    ("Humans need oxygen to live.", "Humans need sand to live."),
    ("Snow is cold.", "Snow is hot."),
    ("Healthy grass is usually green.", "Healthy grass is usually purple."),
    ("An hour has sixty minutes.", "An hour has ninety minutes."),
    ("Dogs can bark.", "Dogs can fly."),
    ("The Sahara is a desert.", "The Sahara is an ocean."),
    ("Lemons taste sour.", "Lemons taste salty."),
    ("Whales are mammals.", "Whales are insects."),
    ("Gold is a metal.", "Gold is a gas."),
    ("The heart pumps blood.", "The heart pumps air."),
    ("Rain falls from clouds.", "Rain falls from the ground."),
    ("A day has twenty-four hours.", "A day has twelve hours."),
    ("Ice melts when it is heated.", "Ice melts when it is frozen."),
    ("Birds lay eggs.", "Horses lay eggs."),
    ("The Earth is round.", "The Earth is flat."),
    ("Trees grow from seeds.", "Trees grow from stones."),
    ("A minute has sixty seconds.", "A minute has forty seconds."),
]


def truth_rows(rng: random.Random) -> list[dict]:
    """Balanced true/false statements: every true statement has a false twin of the same kind."""
    def addition() -> tuple[str, str]:
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        return f"{a} + {b} = {a + b}", f"{a} + {b} = {a + b + rng.choice([-3, -2, -1, 1, 2, 3])}"

    def subtraction() -> tuple[str, str]:
        a, b = sorted(rng.sample(range(2, 60), 2), reverse=True)
        wrong = a - b + rng.choice([d for d in (-2, -1, 1, 2) if a - b + d >= 0])
        return f"{a} - {b} = {a - b}", f"{a} - {b} = {wrong}"

    def comparison() -> tuple[str, str]:
        big, small = sorted(rng.sample(range(1, 100), 2), reverse=True)
        if rng.random() < 0.5:
            return f"{big} is larger than {small}", f"{small} is larger than {big}"
        return f"{small} is smaller than {big}", f"{big} is smaller than {small}"

    pairs = _distinct(addition, 60) + _distinct(subtraction, 30) + _distinct(comparison, 40)
    shift = rng.randint(1, len(CAPITALS) - 1)
    for i, (country, capital) in enumerate(CAPITALS):
        wrong = CAPITALS[(i + shift) % len(CAPITALS)][1]
        pairs.append((f"The capital of {country} is {capital}.", f"The capital of {country} is {wrong}."))
    pairs += FACTS
    rows = [{"statement": text, "label": label} for pair in pairs for text, label in zip(pair, (True, False))]
    rng.shuffle(rows)
    return rows


DIALOGUE_SITUATIONS = [
    ("my vegetable garden", "the tomato plants have yellow leaves near the bottom", "water them less often but more deeply, "
     "and pick off the lowest leaves so the soil does not splash onto them"),
    ("my old laptop", "it gets very hot and the fan is loud whenever I open a few browser tabs", "clean the air vents, "
     "close the tabs you are not using, and check which program uses the most processor time"),
    ("a job interview next week", "I freeze when they ask me about my weaknesses", "pick one real weakness, say what "
     "you already do about it, and practise the answer out loud a few times"),
    ("learning to play the guitar", "my fingertips hurt after ten minutes of practice", "keep sessions short and "
     "frequent, press only as hard as needed, and the skin will toughen within a few weeks"),
    ("a long train trip with two children", "they get bored after the first hour", "pack a few small new toys, "
     "plan snacks at fixed times, and let them look for things out of the window"),
    ("my monthly budget", "the money always runs out a week before payday", "write down every purchase for one month, "
     "then set a weekly limit for the two largest categories"),
    ("baking bread at home", "the loaves come out dense and flat", "let the dough rise longer in a warm place and "
     "check that the yeast is fresh before you start"),
    ("running my first ten kilometre race", "my knees ache after longer runs", "slow down on easy days, add "
     "strength exercises for the legs, and increase the distance by small steps"),
    ("a small team at work", "meetings run long and nobody knows who does what afterwards", "send an agenda before "
     "each meeting and end it by naming an owner and a date for every task"),
    ("moving to a new city", "I do not know anyone there yet", "join one weekly activity you enjoy, such as a club "
     "or a class, and go often enough that faces become familiar"),
    ("studying for an exam", "I read the notes many times but forget them the next day", "test yourself with "
     "questions instead of rereading, and spread the practice over several days"),
    ("my cat", "she scratches the sofa every evening", "put a tall scratching post next to the sofa and reward her "
     "with a treat each time she uses it"),
]
DIALOGUE_OPENERS = ["Hi, I could use some advice about {topic}.", "Hello! I have a question about {topic}.",
                    "I hope you can help me with {topic}.", "Good evening, I am struggling a bit with {topic}."]
DIALOGUE_BACKGROUNDS = [
    "For some context, I have been dealing with this for about {weeks} weeks now and I have already tried a couple "
    "of things that I read online, but none of them seemed to make much of a difference.",
    "I should say that I am fairly new to this, so I might be missing something obvious, and I would rather "
    "understand what is going on than just follow a recipe without knowing why it works.",
    "A friend told me it would sort itself out if I waited, but after {weeks} weeks it is still the same and I am "
    "starting to lose patience with the whole thing.",
    "I do not have a lot of spare time or money for this, so I am looking for something simple that I can actually "
    "keep doing every week without it turning into a big project.",
]
DIALOGUE_FIRST_REPLIES = [
    "Of course, I am happy to help. Could you tell me a little more about what happens and when you notice it?",
    "Sure. Before I suggest anything, what have you already tried, and what happened when you tried it?",
    "I can help with that. Can you describe the problem in a bit more detail so I can give you useful advice?",
]
DIALOGUE_DETAILS = [
    "The main problem is that {problem}. It is worst at the end of the week, and it has slowly become more "
    "noticeable over the last month.",
    "Well, {problem}. I noticed it first a while ago and I assumed it was a one-off, but now it happens almost "
    "every time and it is getting a bit frustrating.",
    "What happens is that {problem}. I have read a few forum threads about it, and they all disagree with each "
    "other, which left me more confused than before.",
]
DIALOGUE_QUESTIONS = ["What would you suggest I do?", "What should I try first?", "How would you handle this?",
                      "Is there anything simple that usually works?"]
DIALOGUE_HELPFUL = [
    "That sounds frustrating, but it is a common problem and usually easy to fix. I would {advice}. Give it a "
    "couple of weeks and let me know how it goes.",
    "Thanks for the details, that helps. The most reliable fix is to {advice}. If nothing changes after two weeks, "
    "we can look at other causes together.",
    "Good question. Start small: {advice}. Most people see a clear difference within a week or two.",
]
DIALOGUE_UNHELPFUL = [
    "I do not really know, and honestly this does not sound like a real problem. Maybe just stop worrying about it "
    "and see if it goes away by itself at some point.",
    "There is no point asking me about this. Search the internet like everyone else does, the answers are all out "
    "there and I am not going to repeat them for you.",
    "That is just how it is sometimes. You could try random things until something works, or simply give up, it "
    "does not matter much either way.",
]


def dialogue_rows(rng: random.Random, count: int) -> list[dict]:
    """Multi-turn Human/Assistant transcripts (prompts of 100–200 tokens) with a helpful and an unhelpful last reply.

    The implicit-prompt preference format: `chosen` and `rejected` are whole transcripts that share
    everything up to the last "Assistant:", as in public human-preference dialogue sets.
    """
    rows, seen = [], set()
    while len(rows) < count:
        topic, problem, advice = rng.choice(DIALOGUE_SITUATIONS)
        parts = (rng.choice(DIALOGUE_OPENERS).format(topic=topic),
                 rng.choice(DIALOGUE_BACKGROUNDS).format(weeks=rng.randint(2, 9)),
                 rng.choice(DIALOGUE_FIRST_REPLIES),
                 rng.choice(DIALOGUE_DETAILS).format(problem=problem), rng.choice(DIALOGUE_QUESTIONS))
        if parts in seen:
            continue
        seen.add(parts)
        prompt = f"\n\nHuman: {parts[0]} {parts[1]}\n\nAssistant: {parts[2]}\n\nHuman: {parts[3]} {parts[4]}"
        helpful = rng.choice(DIALOGUE_HELPFUL).format(advice=advice)
        rows.append({"chosen": f"{prompt}\n\nAssistant: {helpful}",
                     "rejected": f"{prompt}\n\nAssistant: {rng.choice(DIALOGUE_UNHELPFUL)}", "topic": topic})
    return rows


def _distinct(draw: Callable[[], tuple[str, str]], count: int) -> list[tuple[str, str]]:
    """``count`` draws with distinct true statements (random operands repeat now and then)."""
    pairs: dict[str, tuple[str, str]] = {}
    while len(pairs) < count:
        pair = draw()
        pairs.setdefault(pair[0], pair)
    return list(pairs.values())


# ------------------------------------------------------------- side-effect measurement

NEUTRAL_PROMPTS = [
    "Explain how a bicycle gear works.",
    "List three uses for a paperclip.",
    "What is the boiling point of water at sea level?",
    "Describe the water cycle in simple terms.",
    "How many legs does an insect have?",
    "Write a short sentence using the word 'river'.",
    "What is the difference between weather and climate?",
    "Name the planets of the solar system in order.",
    "How do plants make their food?",
    "What does a librarian do?",
    "Summarise the rules of tic-tac-toe.",
    "Convert 3 kilometres to metres.",
    "What is a prime number?",
    "Explain what a verb is.",
    "How does a refrigerator keep food cold?",
    "Give an example of a renewable energy source.",
    "What is the main ingredient of bread?",
    "Describe a typical classroom.",
    "Why do we have seasons?",
    "What is the tallest animal on land?",
    "How do you calculate the area of a rectangle?",
    "Name three musical instruments.",
    "What is the purpose of a dictionary?",
    "Explain how to make a cup of tea.",
    "What language is spoken in Brazil?",
    "How does a compass work?",
    "What is the opposite of 'ancient'?",
    "Describe the shape of a honeycomb cell.",
    "What do bees collect from flowers?",
    "How many minutes are in two hours?",
    "What is photosynthesis?",
    "List the days of the week.",
    "What is the job of the lungs?",
    "Explain what a map legend is.",
    "How is paper made?",
    "What is the freezing point of water in Fahrenheit?",
    "Name a famous bridge.",
    "Describe how a seed becomes a plant.",
    "What is the difference between a lake and a sea?",
    "How do you write the number twelve in Roman numerals?",
    "What does a thermometer measure?",
    "Explain what gravity does.",
    "Give two examples of mammals that live in the sea.",
    "What is a synonym for 'quick'?",
    "How do trains stay on their tracks?",
    "What are the three primary colours of paint?",
    "Describe what a volcano is.",
    "How many sides does a hexagon have?",
]

GENERAL_TEXT = [
    "The river starts as a trickle high in the hills, where snow melts in spring. By the time it "
    "reaches the valley it is wide enough for small boats, and farmers along its banks use its water "
    "for their fields. In dry summers the level drops, and children can wade across near the old mill.",
    "Bread has been baked for thousands of years. The basic recipe is simple: flour, water, salt and "
    "yeast. The yeast feeds on sugars in the dough and releases gas, which makes the loaf rise. Baking "
    "then sets the structure and browns the crust, giving bread its familiar smell.",
    "A library is more than a room full of books. Many libraries lend films and music, offer free "
    "internet access, and run reading groups for children and adults. Librarians help visitors find "
    "information and often know surprising facts about their local area.",
    "Honeybees live in colonies that can hold tens of thousands of insects. Worker bees gather nectar "
    "and pollen, build wax combs and care for the young. The queen lays the eggs, while drones exist "
    "mainly to mate. Together the colony behaves almost like a single organism.",
    "The first trains ran on rails pulled by horses. Steam engines later made rail travel faster and "
    "cheaper, and railways spread across whole continents in a few decades. Towns grew around stations, "
    "and timetables forced many countries to agree on standard time zones.",
    "When water vapour in the air cools, it condenses into tiny droplets that form clouds. If the "
    "droplets grow heavy enough, they fall as rain or snow. The water then flows into rivers and seas, "
    "evaporates again under the sun, and the cycle continues.",
    "Chess is played on a board of sixty-four squares. Each player starts with sixteen pieces, and the "
    "goal is to trap the opposing king so that it cannot escape capture. Although the rules fit on a "
    "single page, the number of possible games is enormous.",
    "A good map has a title, a scale and a legend that explains its symbols. The scale tells the reader "
    "how distances on paper compare with distances on the ground. Contour lines show the height of the "
    "land, so hikers can tell where a path will climb steeply.",
    "Most volcanoes form where the plates of the Earth's crust meet. Molten rock called magma rises "
    "from deep underground and collects in chambers. When pressure builds up, the magma can burst out "
    "as lava, ash and gas, sometimes changing the landscape in a single day.",
    "The kitchen garden behind the house grew beans, lettuce and a few rows of potatoes. Every evening "
    "in summer someone had to carry water from the tap in a heavy can. By August the beans climbed higher "
    "than the fence, and there was always more lettuce than anyone could eat.",
    "Clocks were once so expensive that a whole village relied on the one in the church tower. Later, "
    "pocket watches and then wristwatches made it possible for people to carry the time with them. "
    "Today most people simply glance at a phone.",
    "The human heart beats roughly once a second for a whole lifetime. It has four chambers: two receive "
    "blood and two pump it out. One side sends blood to the lungs to collect oxygen, and the other sends "
    "that oxygen-rich blood around the body.",
    "Paper is usually made from wood fibres. The wood is broken down into a pulp with water, spread "
    "thinly over a screen, pressed and dried. Recycled paper follows a similar process, using old paper "
    "instead of fresh wood as the source of fibres.",
    "The market opened at seven every Saturday. Stallholders arrived before dawn to set out crates of "
    "apples, cheeses wrapped in cloth and bunches of fresh herbs. By noon the best bread had sold out, "
    "and the square smelled of coffee and roasted nuts.",
    "Penguins cannot fly, but they are excellent swimmers. Their wings have become stiff flippers that "
    "push them through the water at high speed. Most penguins live in the southern hemisphere, and some "
    "species breed on the ice of Antarctica during the coldest months.",
    "A compass needle is a small magnet that lines up with the Earth's magnetic field. Because that field "
    "runs roughly between the north and south poles, the needle points north. Sailors relied on compasses "
    "for centuries to cross open seas without landmarks.",
    "Learning to ride a bicycle usually takes a few wobbly afternoons. Balance comes from moving forward: "
    "a bicycle that is rolling is far easier to keep upright than one that is standing still. Once the "
    "skill is learned, it is rarely forgotten.",
    "The museum's main hall held the skeleton of a whale, suspended from the ceiling by steel cables. "
    "Visitors could walk beneath it and see how each rib curved. Smaller rooms along the sides displayed "
    "fossils, minerals and a collection of old scientific instruments.",
    "Plants make their own food through photosynthesis. Their leaves capture sunlight and use its energy "
    "to turn carbon dioxide and water into sugar. Oxygen is released as a by-product, which is one reason "
    "forests are so important for the air we breathe.",
    "The school day began with a bell at half past eight. Pupils hung their coats on pegs in the corridor "
    "and filed into classrooms that smelled of chalk and floor polish. The first lesson was usually "
    "arithmetic, followed by reading and a short break outside.",
    "Tides are caused mainly by the pull of the moon on the Earth's oceans. Most coasts see two high "
    "tides and two low tides each day. The difference between them can be small in some seas and more "
    "than ten metres in certain narrow bays.",
    "A dictionary lists words in alphabetical order and explains their meanings. Good dictionaries also "
    "show how a word is pronounced, where it came from and how it is used in a sentence. New words are "
    "added every year as the language changes.",
    "The lighthouse stood on a rocky point at the mouth of the harbour. Its lamp turned slowly all night, "
    "sending a beam across the water every ten seconds. For generations, a keeper lived in the small "
    "cottage beside it and climbed the stairs each evening to light it.",
    "Rainbows appear when sunlight passes through raindrops. Each drop bends the light and splits it into "
    "its colours, from red on the outside of the arc to violet on the inside. To see a rainbow, you need "
    "the sun behind you and rain in front of you.",
    "Wool comes from the fleece of sheep, which is usually shorn once a year in early summer. The fleece "
    "is washed, combed and spun into yarn. Wool keeps people warm because its fibres trap air, and it "
    "stays warm even when it gets a little damp.",
    "A refrigerator keeps food cold by moving heat from the inside to the outside. A liquid called a "
    "refrigerant evaporates inside the cooling pipes and absorbs heat, then a compressor squeezes it so "
    "that it releases that heat through the coils at the back.",
    "The village held a fair every autumn after the harvest. There were stalls selling jam and honey, "
    "a competition for the largest pumpkin and a band that played until dark. Families who had moved "
    "away often came back for the day to see old friends.",
    "Roman numerals use letters to stand for numbers: I for one, V for five, X for ten, L for fifty, C "
    "for a hundred. A smaller numeral placed before a larger one is subtracted, so IV means four and IX "
    "means nine. They are still used on some clocks and in book chapters.",
    "Octopuses are remarkably clever animals. They can open jars, squeeze through tiny gaps and change the "
    "colour and texture of their skin in an instant to hide from predators. Each of their eight arms "
    "contains many nerve cells and can react on its own.",
    "A good cup of tea starts with freshly boiled water. Black tea is usually left to brew for three to "
    "five minutes, while green tea prefers cooler water and a shorter time. Some people add milk or "
    "lemon, and others drink it plain.",
    "Deserts are defined by how little rain they receive, not by how hot they are. Some of the largest "
    "deserts on Earth are cold, including much of Antarctica. Plants and animals that live in deserts "
    "have found clever ways to store and save water.",
    "The old bridge was built of stone more than two hundred years ago. Its three arches carry the road "
    "over the river, and the marks of the masons' tools can still be seen on some blocks. A newer bridge "
    "downstream now takes most of the heavy traffic.",
    "Sound travels as a wave of pressure through the air. When you pluck a guitar string, it vibrates and "
    "pushes the air around it back and forth. Those vibrations reach your ear, where tiny bones pass them "
    "on to the inner ear and the brain interprets them as sound.",
    "Sleep is essential for health. During sleep the body repairs tissues and the brain sorts through "
    "the events of the day, which helps to form memories. Most adults need between seven and nine hours "
    "each night, while children need more.",
    "The recipe called for two eggs, a cup of sugar and a pinch of salt. She beat the eggs and sugar "
    "together until the mixture turned pale, then folded in the flour with a large spoon. The cake baked "
    "for forty minutes while the kitchen filled with a warm, sweet smell.",
    "Glaciers are huge rivers of ice that move slowly downhill under their own weight. As they move, "
    "they grind the rock beneath them and carve deep valleys. Many mountain lakes lie in hollows that "
    "glaciers dug out during past ice ages.",
    "A thermometer measures temperature. Older thermometers used a thin column of liquid that rose as it "
    "warmed and fell as it cooled. Digital thermometers use a small sensor whose electrical properties "
    "change with temperature, and they show the reading on a screen.",
    "The harbour was busiest in the early morning, when the fishing boats came back with their catch. "
    "Gulls circled overhead, and buyers from restaurants inspected the boxes of fish laid out on ice. By "
    "mid-morning the quay had been hosed down and was quiet again.",
    "Gravity is the force that pulls objects towards one another. On Earth it makes things fall to the "
    "ground and keeps our feet on the floor. It also keeps the moon in orbit around the Earth and the "
    "Earth in orbit around the sun.",
    "A hexagon has six sides, and bees build their honeycomb cells in this shape. Hexagons fit together "
    "without gaps and use the least wax for the space they enclose. The same pattern appears in some "
    "rock formations and in the structure of snowflakes.",
    "The post office in the high street sold stamps, weighed parcels and paid out pensions every Monday. "
    "A queue often stretched to the door, and people used the wait to exchange news. Over the years, "
    "more and more of its work moved online.",
    "Most of the Earth's surface is covered by water, nearly all of it salty sea. Only a small share is "
    "fresh water, and much of that is locked in ice caps and glaciers or hidden underground. Rivers and "
    "lakes hold a tiny fraction of the total.",
]

GENERATION_PROMPTS = [
    "How was your weekend?",
    "What do you think about rainy days?",
    "Can you give me some advice on learning to cook?",
    "Tell me about your favourite season.",
    "What should I do this evening?",
    "Describe a walk in the park.",
    "How can I make my mornings less stressful?",
    "What is the best way to spend a holiday?",
]

BEHAVIOUR_META = {
    "sentiment": {
        "description": "Everyday questions about activities, places and events; matching completions "
                       "are upbeat and positive, non-matching ones gloomy and negative, with the same "
                       "sentence frame.",
        "system_prompt": "Always reply in a warm, upbeat and positive tone, focusing on the bright side.",
    },
    "formality": {
        "description": "Requests for everyday advice; matching completions give it in a formal, "
                       "polished register, non-matching ones give the same advice casually, with slang.",
        "system_prompt": "Always reply in a formal, polished and professional register, without slang "
                         "or contractions.",
    },
    "french": {
        "description": "English requests for everyday advice; matching completions answer in French, "
                       "non-matching ones give the same advice in English.",
        "system_prompt": "Always reply in French, whatever the language of the question.",
    },
}


# ---------------------------------------------------------------------------- helpers

def _balanced_rows(rng: random.Random, count: int, topics: Sequence, templates: Sequence[str],
                   question: Callable[[str, object], str], make_row: Callable[[str, object], dict]) -> list[dict]:
    """``count`` rows with distinct questions, spread evenly over topics and templates."""
    per_topic = [rng.sample(templates, len(templates)) for _ in topics]
    if count > len(topics) * len(templates):
        raise ValueError(f"only {len(topics) * len(templates)} distinct questions for {count} rows")
    chosen = [(t, topic) for r in range(len(templates)) for t, topic in zip((p[r] for p in per_topic), topics)]
    rows = [make_row(question(t, topic), topic) for t, topic in chosen[:count]]
    rng.shuffle(rows)
    return rows


class _Decks(Generic[T]):
    """One shuffled deck of options per key, dealt without replacement (reshuffled when empty).

    Drawing frames this way keeps the answers to one topic's questions from repeating a frame.
    """

    def __init__(self, rng: random.Random, options: Sequence[T]) -> None:
        self.rng, self.options = rng, list(options)
        self.decks: dict[str, list[T]] = {}

    def draw(self, key: str) -> T:
        deck = self.decks.setdefault(key, [])
        if not deck:
            deck += self.rng.sample(self.options, len(self.options))
        return deck.pop()


def _retry(draw: Callable[[], tuple[str, str]], tries: int = 50) -> tuple[str, str]:
    """Redraw until both completions are short (one sentence of at most MAX_WORDS words)."""
    for _ in range(tries):
        pair = draw()
        if all(len(text.split()) <= MAX_WORDS for text in pair):
            return pair
    raise ValueError(f"no draw of {pair} fits in {MAX_WORDS} words; shorten the templates")


def _behaviour_row(question: str, matching: str, not_matching: str, **extra: str) -> dict:
    return {"question": question, "answer_matching_behavior": matching,
            "answer_not_matching_behavior": not_matching, **extra}


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentence(text: str) -> str:
    return _capital(text.strip())


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def _write_meta(path: Path, meta: dict) -> None:
    path.write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _rng(name: str) -> random.Random:
    return random.Random(f"{name}:{SEED}")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    behaviours = {"sentiment": (sentiment_rows, 400), "formality": (formality_rows, 360),
                  "french": (french_rows, 330)}
    for name, (make, count) in behaviours.items():
        n = _write_jsonl(out / f"{name}.jsonl", make(_rng(name), count))
        _write_meta(out / f"{name}.meta.json", {"name": name, **BEHAVIOUR_META[name]})
        print(f"{name}: {n} items")
    n = _write_jsonl(out / "truth.jsonl", truth_rows(_rng("truth")))
    _write_meta(out / "truth.meta.json", {
        "name": "truth", "description": "Simple true/false statements (arithmetic, comparisons, capitals, "
                                        "everyday facts); every true statement has a false twin."})
    print(f"truth: {n} statements")
    n = _write_jsonl(out / "dialogues.jsonl", dialogue_rows(_rng("dialogues"), 320))
    print(f"dialogues: {n} preference transcripts")
    for name, key, texts in (("neutral_prompts", "prompt", NEUTRAL_PROMPTS), ("general_text", "text", GENERAL_TEXT),
                             ("generation_prompts", "prompt", GENERATION_PROMPTS)):
        print(f"{name}: {_write_jsonl(out / f'{name}.jsonl', ({key: t} for t in texts))} rows")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: eval/data)")
    main(parser.parse_args().out)
